"""Forward engines other than netrun's own numpy layers (ONNX Runtime)."""
ENGINES = ("numpy", "onnxruntime")
