"""ReClo's services. Each ``services/<name>`` imports ``shared`` only, never a sibling."""
