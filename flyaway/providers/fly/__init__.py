"""Fly.io: the Machines API client (``client``, its shapes in ``api``) and the agent Machines flyaway
starts inside an app to read what only the app can read (``agent``)."""
