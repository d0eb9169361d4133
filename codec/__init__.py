"""The shared contract in code (numpy only): imported by the edge and the cloud.

- ``bitstream``: the versioned frame container that travels over the wire.
- ``entropy_tables``: integer frequency tables + a library ANS coder (constriction).
- ``feature_codec``: quantize + entropy-code a split tensor at a rate level.
- ``geometry``: letterbox maths shared by the edge's resize and the cloud's boxes.
- ``bundle``: the model bundle on disk (manifest, hashes, files).
"""
