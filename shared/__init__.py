"""Code shared by ReClo's services and clients.

Client-safe (installed by a plain ``pip install reclo``): ``format`` (the snapshot format),
``events`` (the event catalog) and ``api`` (the REST models). Everything else here is
server side and needs the ``server`` extra.
"""
