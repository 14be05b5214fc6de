"""The dependency layer: the only place that speaks torch-pruning. ``groups`` builds dependency
graphs and answers questions about them, ``pruner`` removes channels, hidden units and heads
(recording replayable steps), ``probe`` finds the groups whose removal torch-pruning misreads
(the pruned model would no longer run) so they can be kept whole, ``replay`` checks and
re-applies recorded steps. Scorers, editors,
io and report use it; it imports nothing above ``core``."""
