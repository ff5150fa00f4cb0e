"""The drawing backend: a spec's dataflow, blocks, share and tie groups as Graphviz DOT (`dot.py`),
rendered to SVG or PNG by Graphviz's `dot` program (`graphviz.py`)."""
from tiec.backends.graph.dot import MAX_GRAPH_NODES, dot_source, quote
from tiec.backends.graph.graphviz import FORMATS, output_format, render, write_graph

__all__ = ["FORMATS", "MAX_GRAPH_NODES", "dot_source", "output_format", "quote", "render", "write_graph"]
