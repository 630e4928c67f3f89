"""Code that runs on a board, not on the host: each module here is copied, file by file, to where it runs.

- `tvm_runner.py`: loads and times a TVM build (model.so); copied into OUT as edgec_runtime.py.
- `board_server.py`: a TVM RPC server for a board, real or emulated (`edgec board start`).

Contract: a module here imports nothing from edgec's host side (a test checks it), only the standard
library, numpy and the board's runtime (TVM), and runs on the board's Python.
"""
