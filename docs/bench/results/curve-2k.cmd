direct --connections 100 --rate 2000 --duration 15 --warmup 3
