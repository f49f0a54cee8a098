module github.com/ambit-mesh/ambit/pkg

go 1.26.0

replace github.com/ambit-mesh/ambit/apis => ../apis
