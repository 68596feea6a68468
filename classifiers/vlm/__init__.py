"""VLM judges and moderation APIs as classifiers (README "VLM judges and moderation APIs"): the
paper's three
prompts, a response parser, a majority vote with an explicit unsure policy, and a raw-response
cache that archived responses can be imported into."""
