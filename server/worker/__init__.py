"""The worker process (a child of the server or a Ray actor): the only modules that import torch.
The server process imports `main` only to name it as the child's entry point."""
