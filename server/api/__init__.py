"""The server's edge: gRPC servicer, wire checks, proto conversion, the status table, security,
and the dashboard. Nothing here trains; everything here answers a client."""
