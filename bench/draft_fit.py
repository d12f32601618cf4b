"""The cost model ``speckv analyze`` fits from telemetry, read with and without the logged draft widths.

    python bench/draft_fit.py RUN/telemetry     # e.g. the output of `speckv generate ... --output RUN`

Prints the fitted draft-forward cost, a ms per forward + c ms per row fed (batch × nodes a row; ``fit_costs``), the
widest forward, and the observed, modelled and oracle tokens/s
(:func:`speckv.oracle.oracle_gap`), first as logged, then with ``draft_widths`` dropped (every forward read as one
node a row, as telemetry was before the column).
"""

import sys

import pyarrow.parquet as pq

from speckv import oracle

steps = pq.read_table(sys.argv[1])
print(f"{sys.argv[1]}: {steps.num_rows} rows")
for name, table in (("widths logged", steps), ("widths not read", steps.drop_columns(["draft_widths"]))):
    model, gap = oracle.fit_costs(table), oracle.oracle_gap(table)
    (one, top), (ms_one, ms_top) = model.draft_rows, model.draft_ms
    c = (ms_top - ms_one) / (top - one)
    print(f"  {name}: draft {ms_one - c:.2f} ms + {c:.3f} ms a row fed (widest {top} rows: {ms_top:.2f} ms); "
          f"tok/s observed {gap['observed_tok_s']:.1f}, modelled {gap['modelled_tok_s']:.1f}, "
          f"oracle {gap['oracle_tok_s']:.1f} (gap {gap['gap']:+.3f})")
