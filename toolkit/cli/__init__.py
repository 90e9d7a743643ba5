"""The command line (`toolkit`): app.COMMANDS lists every command; app.main is the entry point."""
