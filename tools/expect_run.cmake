# Runs PROGRAM with ARGS ('|'-separated) and checks its exit code (EXPECT_RC) and that stdout+stderr
# match EXPECT_REGEX. Used by the drt tool's ctest checks, which need an exact exit code.
# CLEAN (optional): a folder removed first, so that a re-run starts from nothing.
if(DEFINED CLEAN)
  file(REMOVE_RECURSE "${CLEAN}")
endif()
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND ${PROGRAM} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc STREQUAL EXPECT_RC)
  message(FATAL_ERROR "exit code ${rc}, expected ${EXPECT_RC}\nstdout:\n${out}\nstderr:\n${err}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT_REGEX}")
  message(FATAL_ERROR "output does not match '${EXPECT_REGEX}'\nstdout:\n${out}\nstderr:\n${err}")
endif()
