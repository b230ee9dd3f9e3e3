"""What the tests share: servers on loopback (real ones and fakes' bases), fault proxies, plans,
workflow helpers and secret searches. Test modules import from here, never from each other."""
