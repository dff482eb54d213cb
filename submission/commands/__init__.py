"""The `python -m submission` commands, one module each (`add_arguments(parser)`, `run(args)`)."""
