direct --connections 400 --duration 20 --warmup 3
