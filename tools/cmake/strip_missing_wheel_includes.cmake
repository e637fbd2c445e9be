# The ROS 2 message wheels on PyPI export CMake targets whose INTERFACE_INCLUDE_DIRECTORIES
# carry include paths of the machine that built them (/opt/python/...). Those do not exist
# here and make CMake's generate step fail. Passed as -DCMAKE_PROJECT_INCLUDE, this file
# removes non-existent entries from imported targets once configuration is complete.
function(_ams_strip_missing_includes)
  get_property(_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(_dirs)
      set(_kept "")
      foreach(_d IN LISTS _dirs)
        if(_d MATCHES "^/opt/python/" AND NOT EXISTS "${_d}")
          continue()
        endif()
        list(APPEND _kept "${_d}")
      endforeach()
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _ams_strip_missing_includes)
