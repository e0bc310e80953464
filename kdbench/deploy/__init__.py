"""Using a distilled student on its own: scoring files (`kdbench predict`), ONNX export,
int8 quantization and the deploy measurements (`kdbench export`, `kdbench quantize`)."""
