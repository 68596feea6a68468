"""Everything that turns a finished run into something a person reads: the JSON document
(:mod:`.document`, typed by :mod:`.schema`, which also generates the shipped JSON Schema), its
terminal, HTML and Markdown renderings (:mod:`.terminal`, :mod:`.html`, :mod:`.markdown`, sharing
:mod:`.format`), the example thumbnails, the paper's published figures shown beside ours, and the
baseline gate."""
