"""Robustness: the perturbations (corruptions and evasions), the adversarial attacks, robust
accuracy over the correctly classified pool (:mod:`.accuracy`), and the Hypothesis fuzzing of
perturbation chains."""
