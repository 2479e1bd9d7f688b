#!/bin/bash
# CPU (user+sys, children included) and wall of each test file run alone.
cd /work/main
for f in $(ls test/*.test.ts examples/*/*.test.ts); do
  /usr/bin/time -f "%e %U %S $f" -a -o /tmp/cpu.txt npx vitest run $f > /dev/null 2>&1
done
echo done >> /tmp/cpu.txt
