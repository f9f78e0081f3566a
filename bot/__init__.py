"""charbot core: the platform-neutral heart of the bot."""
