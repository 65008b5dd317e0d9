"""The live page: what each room hears, served by the daemon (and by `replay --serve`)."""
