"""The run layer: the typed run configuration (:mod:`recede.runs.config`) and the one run path
(:func:`recede.runs.run.run`: build the workload once, train each method, checkpoint, measure,
write the results folder), with the training loop, checkpoints, results and reports it uses."""
