mixed --connections 4000 --rate 5000 --duration 30 --warmup 3
