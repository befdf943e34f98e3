"""CRM records: leads, contacts, accounts, deals; conversion and CSV import."""
