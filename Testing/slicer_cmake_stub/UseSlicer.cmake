# Stand-ins for the Slicer/CTK macros a scripted-module extension calls (see SlicerConfig.cmake here).
# Semantics follow Slicer's CMake/SlicerMacroBuildScriptedModule.cmake and CTK's
# CMake/ctkMacroCompilePythonScript.cmake: scripts and resources are relative to SOURCE_DIR (default: the
# current source folder), copied to DESTINATION_DIR keeping their relative paths, and DESTINATION_DIR is
# installed to INSTALL_DIR (its content, with NO_INSTALL_SUBDIR). Copies happen at configure time here.
include(CTest)

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  foreach(varname TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${varname})
      message(FATAL_ERROR "ctkMacroCompilePythonScript: ${varname} is mandatory")
    endif()
  endforeach()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  get_filename_component(MY_SOURCE_DIR ${MY_SOURCE_DIR} REALPATH)
  set(_files)
  foreach(file ${MY_SCRIPTS})
    get_filename_component(file_ext ${file} EXT)
    if(NOT "${file_ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    list(APPEND _files ${file})
  endforeach()
  list(APPEND _files ${MY_RESOURCES})
  foreach(file ${_files})
    if(IS_ABSOLUTE ${file})
      message(FATAL_ERROR "ctkMacroCompilePythonScript(${MY_TARGET_NAME}): ${file} must be relative to SOURCE_DIR")
    endif()
    if(NOT EXISTS ${MY_SOURCE_DIR}/${file})
      message(FATAL_ERROR "ctkMacroCompilePythonScript(${MY_TARGET_NAME}): no file ${MY_SOURCE_DIR}/${file}")
    endif()
    configure_file(${MY_SOURCE_DIR}/${file} ${MY_DESTINATION_DIR}/${file} COPYONLY)
    set_property(GLOBAL APPEND PROPERTY NUDF_STUB_COPIED_FILES "${MY_TARGET_NAME}|${file}")
  endforeach()
  set(_dir ${MY_DESTINATION_DIR})
  if(MY_NO_INSTALL_SUBDIR)
    set(_dir ${MY_DESTINATION_DIR}/)
  endif()
  install(DIRECTORY "${_dir}" DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${value}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    NO_INSTALL_SUBDIR
    )
endmacro()

function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT})
    message(FATAL_ERROR "slicer_add_python_unittest: no script ${MY_SCRIPT}")
  endif()
  get_filename_component(name ${MY_SCRIPT} NAME_WE)
  add_test(NAME py_${MY_TESTNAME_PREFIX}${name} COMMAND ${CMAKE_COMMAND} -E echo "needs Slicer: ${MY_SCRIPT}")
  file(APPEND ${CMAKE_BINARY_DIR}/slicer_python_unittests.txt "py_${MY_TESTNAME_PREFIX}${name}|${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}\n")
endfunction()
