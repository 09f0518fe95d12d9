"""Where the work runs: the local engine is the code in `scoring` and `tcia` itself; this
package holds the Ray engine (`--engine ray`): Ray Data scoring, actor pools of local
models for augment, and the Ray session. Ray is an optional extra (`ontask[ray]`) and is
imported only when `--engine ray` is asked for."""
