"""The downstream side: the bouncer as a small C2S server for the account's clients."""
