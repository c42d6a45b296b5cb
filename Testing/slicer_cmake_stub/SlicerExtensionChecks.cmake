# Stand-in for Slicer_EXTENSION_GENERATE_CONFIG / Slicer_EXTENSION_CPACK: the Extensions Index needs these
# variables (and a LICENSE file at the top of the extension's source tree).
foreach(var EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION EXTENSION_ICONURL
            EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "extension metadata ${var} is not set")
  endif()
endforeach()
if(NOT EXISTS ${CMAKE_SOURCE_DIR}/LICENSE)
  message(FATAL_ERROR "the extension has no LICENSE file at ${CMAKE_SOURCE_DIR}")
endif()
