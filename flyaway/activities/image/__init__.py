"""The image stage's side effects: the OCI registry client (``registry``) and the stage's activities."""
