"""Campaigns: mailing lists and their members, mass campaigns and the runner that sends them."""
