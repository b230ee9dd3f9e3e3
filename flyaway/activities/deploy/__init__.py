"""The deploy stage's side effects: one module per target platform, the fly.toml translation and the health check."""
