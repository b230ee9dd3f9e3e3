"""Secret stores and the secrets stage's activities.

Values live only inside one activity call: read where they are (a dotenv file or the
worker's environment; later the Fly app itself), registered with the log redaction at once,
checked all together, then written to the destination. Arguments, results, heartbeats and
errors carry names and digests only.
"""
