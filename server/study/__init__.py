"""What a study is and how it runs: the domain records, spec validation into typed settings, the
manager that admits studies, and the runner that drives one study's trials to their end."""
