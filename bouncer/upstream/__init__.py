"""The client role: one session to the account's server (negotiation, SM, reconnection)."""
