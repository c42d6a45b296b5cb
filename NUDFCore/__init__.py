"""NUDFCore: the engine of NUDF Segmentation.

Segments the left atrial appendage (LAA) from cardiac CT as an open surface mesh by learning a Neural
Unsigned Distance Field. The engine has no Slicer dependency; all coordinates are LPS millimetres unless
a parameter's name says otherwise.
"""

__version__ = "0.1.0"
