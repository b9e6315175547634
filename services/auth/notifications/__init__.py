"""Notifications: telling a customer, by webhook and e-mail, when something they care about
happened (a backup failed or is overdue, a recovery ended, a machine is ready, a drill
failed). Auth owns them because it owns the users and so their contact settings.

- ``messages``: what a message says (pure): the JSON document and the e-mail text, with
  only whitelisted, scrubbed fields;
- ``signing``: the HMAC signature of a webhook (pure);
- ``destinations``: which webhook URLs and e-mail addresses are acceptable, and the DNS
  guard that keeps webhooks off private addresses;
- ``store``: the per-user settings and their signing secrets;
- ``webhook``, ``smtp``: the two ways a message leaves (``errors``: how they fail);
- ``delivery``: recording deliveries when an event is handled, and the background sender
  that claims, sends and retries them.
"""
