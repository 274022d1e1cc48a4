"""The account: the one owner of state; every event enters through Account.handle."""
