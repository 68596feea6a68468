"""Everything that turns a finished run into something a person reads: the JSON document
(:mod:`.document`), the terminal, HTML and Markdown renderings of it, the example thumbnails,
the paper's published figures shown beside ours, and the baseline gate."""
