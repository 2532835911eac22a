module example.com/imagebench

go 1.22
