"""Operations on the data: audit trail, retention, GDPR, backup and restore."""
