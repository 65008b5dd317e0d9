"""The subcommands of `audio-monitor`, one module each: `add_parser(sub)` declares its arguments,
`run(args) -> int` does it and returns the exit status.

A module imports only what parsing needs at its top (argparse, paths, short lists); everything
heavier is imported inside `run`, so that `check` and `devices` answer at once and never load
torch or transformers. A new subcommand is one module here plus its line in `monitor.cli`.
"""
