"""The one benchmark home: ``speckv bench`` (budget policies side by side, :mod:`.policies`), ``speckv bench-serve``
(the Serve app under open-loop load, :mod:`.serve`) and ``speckv bench-job`` (the batch job's throughput,
continuous against static batching, :mod:`.job`). Every ratio comes with its paired interval (:mod:`.stats`)."""

from speckv.bench.policies import add_arguments, run

__all__ = ["add_arguments", "run"]
