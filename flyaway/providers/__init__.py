"""One client per cloud: its requests, the credentials it reads, its transient-error rule and its
error parsing. Nothing here imports Temporal; activities turn plan sections into calls of these."""
