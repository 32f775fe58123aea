# Builds and runs tests/consumer, a separate project that uses drt as a user would.
#   MODE=install:      install this build of drt into a scratch prefix, move the prefix (an
#                      installed drt must not point back into the source or build tree), then
#                      find_package(drt 0.1) from it.
#   MODE=subdirectory: add_subdirectory(<drt source>) from the consumer.
# Run by ctest (see tests/CMakeLists.txt) as
#   cmake -DMODE=... -DDRT_SOURCE_DIR=... -DDRT_BINARY_DIR=... -DCONSUMER_SOURCE_DIR=...
#         -DWORK_DIR=... -DGENERATOR=... -DCXX_COMPILER=... [-DMAKE_PROGRAM=...] -P install_consumer.cmake
# Any failing step fails the test.
cmake_minimum_required(VERSION 3.25)

foreach(var MODE DRT_SOURCE_DIR DRT_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run_step name)
  message(STATUS "---- ${name}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer test (${MODE}): step '${name}' failed: ${result}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_options "-DCMAKE_BUILD_TYPE=Release" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
if(MAKE_PROGRAM)
  list(APPEND consumer_options "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()

if(MODE STREQUAL "install")
  # Only the top directory's install rules (headers, targets export, package config): the library
  # is header-only, so this needs no built target, and programs that subdirectories may install
  # (examples, tools) are left out whether they are built or not.
  run_step(install "${CMAKE_COMMAND}" "-DCMAKE_INSTALL_PREFIX=${WORK_DIR}/staging" -DCMAKE_INSTALL_LOCAL_ONLY=ON
           -P "${DRT_BINARY_DIR}/cmake_install.cmake")
  file(RENAME "${WORK_DIR}/staging" "${WORK_DIR}/prefix")
  if(NOT EXISTS "${WORK_DIR}/prefix/include/drt/core.hpp")
    message(FATAL_ERROR "consumer test: the install has no include/drt/core.hpp")
  endif()
  file(GLOB_RECURSE package_files "${WORK_DIR}/prefix/*.cmake")
  if(NOT package_files)
    message(FATAL_ERROR "consumer test: the install has no CMake package files")
  endif()
  foreach(file ${package_files})
    file(READ "${file}" text)
    foreach(tree "${DRT_SOURCE_DIR}" "${DRT_BINARY_DIR}" "${WORK_DIR}/staging")
      string(FIND "${text}" "${tree}" position)
      if(NOT position EQUAL -1)
        message(FATAL_ERROR "consumer test: installed ${file} refers to ${tree}; the install is not relocatable")
      endif()
    endforeach()
  endforeach()
  list(APPEND consumer_options "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
elseif(MODE STREQUAL "subdirectory")
  list(APPEND consumer_options "-DDRT_SOURCE_DIR=${DRT_SOURCE_DIR}")
else()
  message(FATAL_ERROR "install_consumer.cmake: MODE must be install or subdirectory, not '${MODE}'")
endif()

run_step(configure "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
         ${consumer_options})
if(MODE STREQUAL "install")
  # find_package must have taken the scratch install, not some drt installed on the system.
  file(STRINGS "${WORK_DIR}/build/CMakeCache.txt" found_dir REGEX "^drt_DIR:")
  if(NOT found_dir MATCHES "${WORK_DIR}/prefix/")
    message(FATAL_ERROR "consumer test: find_package(drt) took '${found_dir}', not the scratch install")
  endif()
endif()
run_step(build "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run_step(run "${WORK_DIR}/build/drt_consumer")
