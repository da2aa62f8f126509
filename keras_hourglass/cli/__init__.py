"""The `hourglass` console script: one module per subcommand."""
