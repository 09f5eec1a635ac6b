"""Exporters: netrun nets to other formats (ONNX, in ``netrun.export.onnx``)."""
