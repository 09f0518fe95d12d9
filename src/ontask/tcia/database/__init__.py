"""The constraint database (TCIA step 2): real constraints, grouped by task-type cluster.

The search (step 3) needs, for a seed's task type T, the constraints people actually use
for that kind of task, and for a constraint Cj the most similar of those constraints.
So the database keeps:

- every distinct task type (by normalised text) with its embedding; near-identical types
  are merged by DBSCAN (cosine distance <= eps) into clusters, each with a centroid so
  the search can retrieve "the entry whose task type is most similar to T";
- every distinct constraint (by normalised text) with its embedding, majority category
  and an optional `simplified_query`; per cluster, the union of its member records'
  constraints with counts (near-duplicates within a cluster, cosine >= near_duplicate,
  folded into the most frequent one so Add does not draw the same requirement twice);
- a per-cluster faiss `IndexFlatIP` over normalised vectors (exact cosine), built lazily
  from the stored arrays on first use, so loading is a handful of `np.load` calls.

It is built once (embedding dominates the cost; everything else is vectorised or linear)
and saved as .npy arrays plus JSON in a data folder named by `manifest.json`; the manifest
is replaced last, so saving is atomic and leaves other files in the folder (the CLI keeps
decomposed.jsonl there) alone. `load` checks the
format version and, when asked, the embedder name: vectors from another model live in a
different space and would silently retrieve nonsense.

The modules: `records` (parse and check rows), `cluster` (embed, DBSCAN, fold near
duplicates), `build` (records -> database), `db` (`ConstraintDB`: query, save, load),
`store` (the files on disk), `common` (constants, memoised normalisers).
"""

from .build import build_database
from .cluster import cluster_task_types, fold_near_duplicates
from .common import FORMAT_VERSION, MANIFEST, Progress
from .db import ClusterInfo, ConstraintDB
from .records import DatabaseError, DBRecord, EmbedderLike, RecordError, parse_records

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "ClusterInfo", "ConstraintDB", "DBRecord", "DatabaseError", "EmbedderLike",
    "Progress", "RecordError", "build_database", "cluster_task_types", "fold_near_duplicates", "parse_records",
]
