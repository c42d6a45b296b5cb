# A stand-in for a Slicer build tree's SlicerConfig.cmake, used only by Testing/test_slicer_cmake.py.
#
# A real configure needs a full Slicer build (Slicer_DIR); PyPI's slicer-core-sdk is a C++/VTK-module SDK
# for Slicer Core (no Slicer_USE_FILE, no slicerMacroBuildScriptedModule, ctkMacroCompilePythonScript or
# extension packaging), so it cannot configure a scripted-module extension. This stub lets CMake really
# run the extension's CMakeLists.txt: it defines the variables and macros those files use, with the file
# handling of Slicer's and CTK's macros (existence checks, copy to the build tree, install of that tree),
# so configuring and installing shows every named path exists and exactly what the extension installs.
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 8)
set(Slicer_USE_PYTHONQT ON)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionChecks.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionChecks.cmake")
