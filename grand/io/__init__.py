"""Files in and out of grand.

In: planning an input into shards and streaming their images (`sources`), bounded and retried reads
(`bounded`), transient vs content failures (`errors`), validating and normalising image bytes
(`images`), SA-1B ground-truth sidecars (`sa1b`).
Out: the output folder layout (`output`), the shard plan and manifest (`manifest`), atomic shard
commits (`sink`), one writer per folder (`lock`) and what `grand status` reports (`status`).
"""
