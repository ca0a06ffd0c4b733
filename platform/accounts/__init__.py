"""Accounts: users who log in with an e-mail address and are either volunteers or researchers."""
